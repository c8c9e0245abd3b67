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
# cores. On the 2-core machine with one core taken by another process, the fp32 fast path took 2.5 s per
# step with libgomp's default spin and 0.77 s with GOMP_SPINCOUNT=10000 (0.28 s quiet); the bf16 path
# takes 920 / 954 ms busy and 141 / 145 ms quiet either way (README, "A busy CPU"). It must be set
# before torch loads OpenMP, so it applies to `python -m cycleseg.train`; set it yourself to override.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import contextlib
import dataclasses
import json
import signal
import sys
import time

import numpy as np
import torch

from .checkpoint import CheckpointError
from .config import Config, check_image_side, from_saved, given_fields, parse_args
from .data.h5format import DataError, read_meta
from .data.splits import make_streams, open_splits, split_paths
from .distributed import World, all_sum_, any_rank, broadcast, setup, teardown, wrapper
from .evaluate import confusion, evaluate_volumes
from .fastpath import Plan, cpu_load_note, plan_for
from .faults import FiniteGuard, Interrupted, NonFiniteLoss, StopSignals
from .models import count_parameters, networks_from_config, use_ops
from .runfolder import RunFolder
from .runstate import load_state_dict, state_dict
from .steps import STEPS
from .usage import UsageError, fail
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


def validate(cfg, nets, data, device, world: World) -> dict:
    """Slice metrics (each process scores its share, the confusion matrices summed) and, for ACDC, the
    per-volume scores (rank 0, shared)."""
    g_is = nets["G_IS"]
    cm = confusion(g_is, data.val, device, indices=np.arange(world.rank, len(data.val), world.size))
    all_sum_(cm.mat, world)
    result = cm.summary(data.val.meta.class_names)
    if data.volumes is not None:                                    # ACDC: 3D scores per volume
        vol = evaluate_volumes(g_is, data.volumes, cfg.image_size, device) if world.rank == 0 else None
        result.update(broadcast(vol, world))
    return result


def fail_for_tests(world: World, n: int) -> None:
    """CYCLESEG_FAIL_FOR_TESTS=rank:step makes that process fail after that step (the test that a dead
    process takes a distributed job down)."""
    spec = os.environ.get("CYCLESEG_FAIL_FOR_TESTS")
    if spec and tuple(map(int, spec.split(":"))) == (world.rank, n):
        raise RuntimeError(f"process {world.rank} failed at step {n} (CYCLESEG_FAIL_FOR_TESTS)")


def mean_terms(terms: dict, world: World) -> dict:
    """The loss terms as numbers, averaged over processes (a host sync: once per --log-every steps)."""
    names = sorted(terms)
    t = all_sum_(torch.stack([terms[k].detach().float() for k in names]), world) / world.size
    return dict(zip(names, t.tolist()))


def train(cfg: Config, until: int | None = None, given=None) -> dict:
    """Run (or resume) training, in this process or as one process of a torchrun job. `until` (or
    --stop-after) stops after that step as if interrupted (checkpoint saved). `given`: the fields set
    explicitly (what --resume is asked to change; default: those that differ from Config's defaults).
    Returns the last validation metrics."""
    if given is None:
        given = {f.name for f in dataclasses.fields(Config) if getattr(cfg, f.name) != getattr(Config(), f.name)}
    cfg = cfg.resolved()
    until = until if until is not None else cfg.stop_after
    world, device = setup(cfg.device)
    folder = RunFolder(cfg.out, world.rank)
    try:
        with StopSignals() as stop:                                 # from the start: a signal during set-up too
            return run(cfg, until, world, device, folder, given, stop)
    finally:
        folder.unlock()
        teardown(world)


def run(cfg: Config, until, world: World, device, folder: RunFolder, given, stop: StopSignals) -> dict:
    cfg, saved = folder.open(cfg, given)
    data = open_splits(cfg.data, cfg.val_data, cfg.image_size, cfg.progress and world.rank == 0)
    meta = data.train.meta
    for split in (data.train.meta, data.val.meta):
        try:
            for side in (split.height, split.width):
                check_image_side(side, cfg.mode, f"images {split.height}x{split.width}")
        except UsageError as e:
            raise DataError(f"{split.path}: {e}; convert the data at another size (--size H W)") from None
    plan = Plan.from_state(saved["plan"]) if saved is not None and "plan" in saved else plan_for(cfg, device)
    nets, step = build(cfg, meta, device, plan)
    step.distribute(wrapper(world, device))
    streams = make_streams(data.train, cfg.labeled_fraction, cfg.seed, cfg.batch_size, "unlabeled" in step.streams,
                           device, cfg.prefetch, cfg.flip, cfg.scale_crop, world.rank, world.size, cfg.rotate)
    n, best = (load_state_dict(saved, nets, step, streams, folder.last, world, device) if saved is not None
               else (0, float("-inf")))
    if saved is not None:                                           # --steps / --lr changed on resume
        old = from_saved(saved["config"])
        if (cfg.steps, cfg.lr, cfg.lr_d) != (old.steps, old.lr, old.lr_d):
            step.reschedule(cfg.steps, {k: getattr(cfg, f) / getattr(old, f) for k, f in step.lr_fields.items()})
    folder.start(cfg, n)
    folder.note(f"{cfg.mode}: {streams.num_labeled} labeled / {streams.num_unlabeled} unlabeled images, "
                f"{cfg.steps} steps on {device}" + (f" x {world.size} processes" if world.active else "") +
                f", run folder {folder.path}\n{plan.describe()}")
    if device.type == "cpu" and (busy := cpu_load_note()):
        folder.note(busy)

    def save(is_best=False):
        folder.save(state_dict(n, best, cfg, nets, step, streams, world, device), is_best)

    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=n, disable=not cfg.progress or world.rank > 0, dynamic_ncols=True,
               desc=cfg.mode)
    t0, result, guard = time.time(), {}, FiniteGuard()
    with contextlib.ExitStack() as scope:
        if plan.fused_ops:
            from . import ops
            scope.enter_context(ops.validation(False))          # masks were checked at load: no per-step sync
        scope.callback(streams.close)
        scope.callback(bar.close)
        while n < cfg.steps:
            images, masks = next(streams.loaders["labeled"])
            batch = {"images": images.to(device, non_blocking=True), "masks": masks.to(device, non_blocking=True)}
            if "unlabeled" in streams.loaders:
                batch["unlabeled"] = next(streams.loaders["unlabeled"])[0].to(device, non_blocking=True)
            terms = step(batch)
            n += 1
            fail_for_tests(world, n)
            guard.update(terms, n)
            bar.update(1)
            logging = n % cfg.log_every == 0 or n == cfg.steps
            if logging:
                guard.check(folder.last)
                vals = mean_terms(terms, world)
                folder.log({"step": n, "split": "train", "time": time.time() - t0, "lr": step.lr(), **vals})
                bar.set_postfix({k: f"{v:.3f}" for k, v in vals.items()}, refresh=False)
            # a stop signal: after this step on one process; under torchrun at a log step, the same on every process
            stopping = (logging and any_rank(stop.signum is not None, world)) if world.active else stop.signum is not None
            if n % cfg.eval_every == 0 or n == cfg.steps:
                result = validate(cfg, nets, data, device, world)
                folder.log({"step": n, "split": "val", **result})
                if world.rank == 0:                                 # pictures and the line: rank 0 only
                    folder.picture(n, sample_columns(nets, data.val, device), SAMPLE_TITLES)
                    vol = f"  volume Dice {result['volume_mdice']:.4f}" if "volume_mdice" in result else ""
                    bar.write(f"step {n}: val mIoU {result['miou']:.4f}  mDice {result['mdice']:.4f}{vol}")
                if result["miou"] > best:
                    best = result["miou"]
                    guard.check(folder.last)
                    save(True)
            if n % cfg.ckpt_every == 0 or n == cfg.steps or n == until or stopping:
                guard.check(folder.last)                            # never checkpoint a diverged model
                save()
            if stopping:
                signum = stop.signum or signal.SIGTERM
                raise Interrupted(signum, n, f"stopped by signal {signal.Signals(signum).name} after step {n}; "
                                  f"saved {folder.last}. Resume with: python -m cycleseg.train --resume "
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
    given = given_fields(argv)
    try:
        cfg = cfg.resolved()
    except UsageError as e:
        return fail(e)
    try:
        if dry_run:
            meta = read_meta(split_paths(cfg.data, cfg.val_data, cfg.image_size, cfg.progress)["train"])
            torch.manual_seed(cfg.seed)
            print(describe(cfg, meta, networks_from_config(cfg, meta, STEPS[cfg.mode].networks)))
            return 0
        result = train(cfg, given=given)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except (DataError, CheckpointError, NonFiniteLoss, UsageError, OSError) as e:
        return fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"miou": result.get("miou"), "mdice": result.get("mdice"), "out": cfg.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
