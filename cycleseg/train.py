"""python -m cycleseg.train: semi-supervised (CycleGAN) or supervised training of G_IS.

    data     = open_splits(...)                     the split files behind --data (cycleseg.data.splits)
    plan     = plan_for(cfg, device)                the fast path chosen for this device (fastpath.py)
    nets     = networks_from_config(cfg, meta)      the networks the method trains (models.py)
    step     = STEPS[cfg.mode](nets, cfg, meta, plan)  one update of the method (steps.py)
    folder   = RunFolder(cfg.out)                   config, metrics, pictures, checkpoints (runfolder.py)

Every --log-every steps: the loss terms -> metrics.jsonl. Every --eval-every steps: validation metrics
(and ACDC per-volume scores) -> metrics.jsonl, a picture -> samples/, best.pt when mIoU improves.
Every --ckpt-every steps: last.pt (everything needed to resume exactly).
"""
from __future__ import annotations

import os

# OpenMP threads that spin while they wait fight the loader thread and any other busy process for the
# cores: on the 2-core machine, with one core taken by another process, a CPU-preset step took 2.5 s
# instead of 0.28 s. A short spin (GOMP_SPINCOUNT=10000) costs ~6 % on a quiet machine and keeps the
# loaded case at 0.77 s (passive waiting: +28 % quiet, 0.59 s loaded; measured 2026-11-27). It must be
# set before torch loads OpenMP, so it applies to `python -m cycleseg.train`; set it yourself to override.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import contextlib
import dataclasses
import json
import signal
import sys
import time

import torch

from .checkpoint import CheckpointError
from .config import Config, parse_args
from .data.h5format import DataError, read_meta
from .data.splits import make_streams, open_splits, split_paths
from .evaluate import evaluate, evaluate_volumes
from .fastpath import Plan, plan_for
from .faults import FiniteGuard, Interrupted, NonFiniteLoss, StopSignals
from .models import count_parameters, data_info, networks_from_config, use_ops
from .runfolder import RunFolder
from .steps import STEPS
from .visualize import SAMPLE_TITLES, sample_columns


def build(cfg: Config, meta, device, plan: Plan):
    """(networks, step) of a run, on `device`, initialised from cfg.seed, running as `plan` says."""
    torch.manual_seed(cfg.seed)
    step_cls = STEPS[cfg.mode]
    nets = networks_from_config(cfg, meta, step_cls.networks)
    for net in nets.values():
        use_ops(net.to(device), plan.ops())
        if plan.channels_last:
            net.to(memory_format=torch.channels_last)
    return nets, step_cls(nets, cfg, meta, plan)


def state_dict(step_no: int, best: float, cfg: Config, nets: dict, step, streams) -> dict:
    return {"step": step_no, "best_miou": best, "config": dataclasses.asdict(cfg), "plan": step.plan.state_dict(),
            "data": data_info(step.meta),
            "nets": {k: v.state_dict() for k, v in nets.items()}, **step.state_dict(),
            "streams": {k: v.state_dict() for k, v in streams.loaders.items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}


def load_state_dict(s: dict, nets: dict, step, streams, path) -> tuple[int, float]:
    """Restore a checkpoint into the run's objects; returns (step number, best mIoU). A checkpoint of
    other data or networks: CheckpointError saying which, before any training."""
    for what in ("num_classes", "channels"):
        have, want = s.get("data", {}).get(what), getattr(step.meta, what)
        if have is not None and have != want:
            raise CheckpointError(f"{path}: trained on data with {have} {what.replace('_', ' ')}, but "
                                  f"{step.meta.path} has {want}")
    try:
        for k, net in nets.items():
            net.load_state_dict(s["nets"][k])
        step.load_state_dict(s)
        for k, loader in streams.loaders.items():
            loader.load_state_dict(s["streams"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not match this run's networks or optimizers "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    torch.set_rng_state(s["rng"]["torch"])
    if s["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["rng"]["cuda"])
    return s["step"], s["best_miou"]


def validate(cfg, nets, data, device) -> dict:
    result = evaluate(nets["G_IS"], data.val, device)
    if data.volumes is not None:                                    # ACDC: 3D scores per volume
        result.update(evaluate_volumes(nets["G_IS"], data.volumes, cfg.image_size, device))
    return result


def train(cfg: Config, until: int | None = None) -> dict:
    """Run (or resume) training. `until` stops after that step as if interrupted (checkpoint saved).
    Returns the last validation metrics."""
    cfg = cfg.resolved()
    folder = RunFolder(cfg.out)
    cfg, saved = folder.open(cfg)
    device = torch.device(cfg.device)
    data = open_splits(cfg.data, cfg.val_data, cfg.image_size, cfg.progress)
    meta = data.train.meta
    plan = Plan.from_state(saved["plan"]) if saved is not None and "plan" in saved else plan_for(cfg, device)
    nets, step = build(cfg, meta, device, plan)
    streams = make_streams(data.train, cfg.labeled_fraction, cfg.seed, cfg.batch_size, "unlabeled" in step.streams,
                           device, cfg.prefetch, cfg.flip, cfg.scale_crop, rotate=cfg.rotate)
    n, best = load_state_dict(saved, nets, step, streams, folder.last) if saved is not None else (0, float("-inf"))
    folder.start(cfg, n)
    folder.note(f"{cfg.mode}: {streams.num_labeled} labeled / {streams.num_unlabeled} unlabeled images, "
                f"{cfg.steps} steps on {cfg.device}, run folder {folder.path}\n{plan.describe()}")

    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=n, disable=not cfg.progress, dynamic_ncols=True, desc=cfg.mode)
    t0, result, guard = time.time(), {}, FiniteGuard()
    with contextlib.ExitStack() as scope:
        if plan.fused_ops:
            from . import ops
            scope.enter_context(ops.validation(False))          # masks were checked at load: no per-step sync
        scope.callback(streams.close)
        scope.callback(bar.close)
        stop = scope.enter_context(StopSignals())
        while n < cfg.steps:
            images, masks = next(streams.loaders["labeled"])
            batch = {"images": images.to(device, non_blocking=True), "masks": masks.to(device, non_blocking=True)}
            if "unlabeled" in streams.loaders:
                batch["unlabeled"] = next(streams.loaders["unlabeled"])[0].to(device, non_blocking=True)
            terms = step(batch)
            n += 1
            guard.update(terms, n)
            bar.update(1)
            if n % cfg.log_every == 0 or n == cfg.steps:
                guard.check()
                vals = {k: v.item() for k, v in terms.items()}    # host sync, once per log_every steps
                folder.log({"step": n, "split": "train", "time": time.time() - t0, "lr": step.lr(), **vals})
                bar.set_postfix({k: f"{v:.3f}" for k, v in vals.items()}, refresh=False)
            if n % cfg.eval_every == 0 or n == cfg.steps:
                result = validate(cfg, nets, data, device)
                folder.log({"step": n, "split": "val", **result})
                folder.picture(n, sample_columns(nets, data.val, device), SAMPLE_TITLES)
                vol = f"  volume Dice {result['volume_mdice']:.4f}" if "volume_mdice" in result else ""
                bar.write(f"step {n}: val mIoU {result['miou']:.4f}  mDice {result['mdice']:.4f}{vol}")
                if result["miou"] > best:
                    best = result["miou"]
                    guard.check()
                    folder.save(state_dict(n, best, cfg, nets, step, streams), best=True)
            if n % cfg.ckpt_every == 0 or n == cfg.steps or n == until or stop.signum:
                guard.check()                                       # never checkpoint a diverged model
                folder.save(state_dict(n, best, cfg, nets, step, streams))
            if stop.signum:
                raise Interrupted(stop.signum, n, f"stopped by signal {signal.Signals(stop.signum).name} after step "
                                  f"{n}; saved {folder.last}. Resume with: python -m cycleseg.train --resume "
                                  f"--out {folder.path}")
            if until is not None and n >= until:
                break
    return result


def describe(cfg: Config, meta, nets: dict) -> str:
    lines = ["config:", json.dumps(dataclasses.asdict(cfg), indent=2),
             f"data: {meta.path} ({meta.count} images {meta.height}x{meta.width}x{meta.channels}, "
             f"{meta.num_classes} classes)", "parameters:"]
    lines += [f"  {k}: {count_parameters(v):,}" for k, v in nets.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg, dry_run = parse_args(argv)
    try:
        cfg = cfg.resolved()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if dry_run:
            meta = read_meta(split_paths(cfg.data, cfg.val_data, cfg.image_size, cfg.progress)["train"])
            torch.manual_seed(cfg.seed)
            print(describe(cfg, meta, networks_from_config(cfg, meta, STEPS[cfg.mode].networks)))
            return 0
        result = train(cfg)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except (DataError, CheckpointError, NonFiniteLoss, FileExistsError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"miou": result.get("miou"), "mdice": result.get("mdice"), "out": cfg.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
