"""python -m cycleseg.train: semi-supervised (CycleGAN) or supervised training of G_IS.

    folder   = RunFolder(cfg.out)                   config, metrics, pictures, checkpoints (runfolder.py)
    data     = open_splits(...)                     the split files behind --data (data/splits.py)
    plan     = plan_for(cfg, device)                the fast path chosen for this device (fastpath.py)
    nets, step = build(cfg, meta, device, plan)     the networks and the method's step (assemble.py; the step of
                                                    cycleseg/methods/<method>.py, picked by assemble.make_step)
    streams  = make_streams(...)                    the labeled and unlabeled batches (data/streams.py)

Every --log-every steps: the loss terms -> metrics.jsonl. Every --eval-every steps: validation metrics
(and ACDC per-volume scores) -> metrics.jsonl, a picture -> samples/, best.pt when mIoU improves.
Every --ckpt-every steps: last.pt (everything needed to resume exactly).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from . import figures, ops
from .assemble import build, networks_of, optim_of
from .checkpoint import CheckpointError, digest, tensors_digest, weights_digest
from .config import Config, check_image_side, flat, given_fields, parse_args, unread_notes
from .data.h5format import DataError, read_meta
from .data.splits import Splits, open_splits, split_paths, takes_image_size
from .data.streams import Streams, make_streams
from .distributed import World, all_sum_, any_rank, broadcast, setup, teardown, wrapper
from .evaluate import confusion, evaluate_file_volumes, evaluate_volumes, samples
from .fastpath import Plan, cpu_load_note, plan_for
from .faults import FiniteGuard, Interrupted, NonFiniteLoss, StopSignals
from .methods import METHODS
from .models import count_parameters
from .runfolder import RunFolder
from .runstate import check_run_state, load_state_dict, state_dict
from .usage import UsageError, fail, grid_cell, run_command, say, tell


@dataclass
class Run:
    """What a training run holds while it trains."""
    cfg: Config
    world: World
    device: torch.device
    folder: RunFolder
    data: Splits
    plan: Plan
    nets: dict
    step: object
    streams: Streams
    n: int = 0                      # steps done
    best: float = float("-inf")     # the best validation mIoU so far
    clock: dict = field(default_factory=lambda: {"t0": time.time(), "evaluating": 0.0})   # wall time, all sessions

    def save(self, is_best: bool = False) -> None:
        state = state_dict(self.n, self.best, self.cfg, self.nets, self.step, self.streams, self.data, self.world,
                           self.device)
        if state is not None:                                       # a resume's records go on from these times
            state["clock"] = {"time": time.time() - self.clock["t0"], "evaluating": self.clock["evaluating"]}
            state["weights_digest"] = weights_digest(state["nets"])  # an edit by hand is refused by every command
            state["moments_digest"] = tensors_digest(state["optimizers"])   # and by a resume
            state["digest"] = digest(state)                         # and of the run state: checked by every command
        self.folder.save(state, is_best)


def validate(run: Run) -> dict:
    """Slice metrics (each process scores its share, the confusion matrices summed) and, for ACDC, the
    per-volume scores (rank 0, shared)."""
    g_is, val, world = run.nets["G_IS"], run.data.val, run.world
    cm = confusion(g_is, val, run.device, indices=np.arange(world.rank, len(val), world.size))
    all_sum_(cm.mat, world)
    result = cm.summary(val.meta.class_names)
    if run.data.volumes is not None:                                # ACDC: 3D scores per volume
        vol = evaluate_volumes(g_is, run.data.volumes, run.cfg.image_size, run.device) if world.rank == 0 else None
        result.update(broadcast(vol, world))
    elif val.volumes is not None:                                   # a file of volumes (NIfTI): the same scores
        vol = evaluate_file_volumes(g_is, val, run.device) if world.rank == 0 else None
        result.update(broadcast(vol, world))
    return result


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
        ours, defaults = flat(cfg), flat(Config())
        given = {name for name in ours if ours[name] != defaults[name]}
    cfg = cfg.resolved()
    until = until if until is not None else cfg.stop_after
    world, device = setup(cfg.device)
    folder = RunFolder(cfg.out, world.rank)
    try:
        with StopSignals() as stop:                                 # from the start: a signal during set-up too
            return loop(prepare(cfg, world, device, folder, given), until, stop)
    except Exception as e:
        if world.size > 1:      # torchrun stops the other processes as soon as one ends: this one's cause first
            say(f"error on process {world.rank} of {world.size}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
        raise
    finally:
        folder.close()
        teardown(world)


def resume_command(folder: RunFolder, world: World) -> str:
    """The command that resumes the run as it ran: torchrun with its process count (another count changes the
    global batch: a plain `python -m` resume of a 2-process run trained on half the batch)."""
    if not world.active:
        return f"python -m cycleseg.train --resume --out {folder.path}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world.size)
    nodes = f" --nnodes {world.size // local} (and the launch's rendezvous options)" if local != world.size else ""
    return f"torchrun --nproc_per_node {local}{nodes} -m cycleseg.train --resume --out {folder.path}"


def processes_note(saved: dict, cfg: Config, world: World) -> str | None:
    """A note when a run resumes on another number of processes than it trained on: its global batch changes."""
    was, now = saved.get("world_size", 1), world.size
    if not isinstance(was, int) or was == now:
        return None
    return (f"note: the run trained on {was} process{'es' if was > 1 else ''}, it resumes on {now}: the global batch "
            f"is now {cfg.batch_size * now} labeled images a step (it was {cfg.batch_size * was}); resume with "
            f"{was} process{'es' if was > 1 else ''} to keep it")


def check_given_size(cfg: Config, given, metas) -> None:
    """UsageError when --image-size is given for converted data of another size (it was ignored, and recorded
    in config.json as the run's size)."""
    if "image_size" not in given or takes_image_size(cfg.data):
        return
    for m in metas:
        if (m.height, m.width) != (cfg.image_size, cfg.image_size):
            raise UsageError(f"--image-size {cfg.image_size}: {m.path} holds {m.height}x{m.width} images, the size it "
                             f"was converted at (--image-size sizes the built-in data and an SSL4MIS folder); leave "
                             f"--image-size out, or convert the data again with --size {cfg.image_size} {cfg.image_size}")


def prepare(cfg: Config, world: World, device, folder: RunFolder, given) -> Run:
    """The run of `cfg` in `folder`: a new one, or the one its last.pt continues."""
    cfg, saved = folder.open(cfg, given)
    data = open_splits(cfg.data, cfg.val_data, cfg.image_size, cfg.progress and world.rank == 0)
    for split in (data.train.meta, data.val.meta):
        try:
            for side in (split.height, split.width):
                check_image_side(side, cfg.mode, f"images {split.height}x{split.width}", cfg.generator)
        except UsageError as e:
            raise DataError(f"{split.path}: {e}; convert the data at another size (--size H W)") from None
    check_given_size(cfg, given, (data.train.meta, data.val.meta))
    m = data.train.meta
    if cfg.rotate and cfg.augment == "none" and m.height != m.width:   # it rotated square images only: nothing
        raise UsageError(f"--rotate: {m.path} holds {m.height}x{m.width} images; rotations by 90 degrees need square "
                         f"images (--augment ssl4mis turns non-square ones by 180 degrees); leave --rotate out")
    if (data.val.meta.height, data.val.meta.width) != (m.height, m.width):
        folder.note(f"note: the val split {data.val.meta.path} holds {data.val.meta.height}x{data.val.meta.width} "
                    f"images, the train split {m.height}x{m.width}: validation scores them at their own size, while "
                    f"predict resizes images to the training size")
    plan = (check_run_state(saved, folder.last) if saved is not None else None) or plan_for(cfg, device)
    nets, step = build(cfg, data.train.meta, device, plan)
    step.distribute(wrapper(world, device))
    streams = make_streams(data.train, cfg.labeled_fraction, cfg.seed, cfg.batch_size, "unlabeled" in step.streams,
                           device, cfg.prefetch, cfg.flip, cfg.scale_crop, world.rank, world.size, cfg.rotate,
                           cfg.augment)
    run = Run(cfg, world, device, folder, data, plan, nets, step, streams)
    if saved is not None:
        run.n, run.best = load_state_dict(saved, nets, step, streams, data, folder.last, world, device)
        run.clock = resumed_clock(saved.get("clock"), folder.note)
        if note := processes_note(saved, cfg, world):
            folder.note(note)
        step.reschedule(optim_of(cfg))          # the rates and decay from the config (--steps / --lr changed on resume)
    folder.resumed()
    folder.start(cfg, run.n)
    if cfg.tensorboard:
        folder.tensorboard(run.n)
    reread = "unlabeled" in streams.loaders and not streams.num_unlabeled       # 100 % labels, semi-supervised
    folder.note(f"{cfg.mode}: {streams.num_labeled} labeled / {streams.num_unlabeled} unlabeled images"
                + (" (the unlabeled stream reads the labeled images, without their labels)" if reread else "") + ", "
                f"{cfg.steps} steps on {device}" + (f" x {world.size} processes" if world.active else "") +
                f", run folder {folder.path}\n"
                + plan.describe(adam=any(isinstance(o, torch.optim.Adam) for o in step.optimizers.values())))
    if leak := data.leak_note():
        folder.note(leak)
    for line in unread_notes(cfg, given):
        folder.note(line)
    if device.type == "cpu" and (busy := cpu_load_note()):
        folder.note(busy)
    return run


def next_batch(run: Run) -> dict:
    loaders, device = run.streams.loaders, run.device
    images, masks = next(loaders["labeled"])
    batch = {"images": images.to(device, non_blocking=True), "masks": masks.to(device, non_blocking=True)}
    if "unlabeled" in loaders:
        batch["unlabeled"] = next(loaders["unlabeled"])[0].to(device, non_blocking=True)
    return batch


def evaluation(run: Run, guard: FiniteGuard, bar, clock: dict) -> dict:
    """Validate, log (with the time since the start, and the part of it spent training), draw the samples
    (rank 0) and keep best.pt."""
    start = time.time()
    result = validate(run)
    times = {"time": start - clock["t0"], "train_time": start - clock["t0"] - clock["evaluating"]}
    run.folder.log({"step": run.n, "split": "val", **times, **result})
    if run.world.rank == 0:                                         # pictures and the line: rank 0 only
        run.folder.picture(run.n, figures.sample_grid(samples(run.nets, run.data.val, run.device),
                                                      run.data.val.meta))
        run.folder.curves(final=run.n >= run.cfg.steps)
        vol = f"  volume Dice {result['volume_mdice']:.4f}" if "volume_mdice" in result else ""
        tell(f"step {run.n}: val mIoU {result['miou']:.4f}  mDice {result['mdice']:.4f}{vol}", bar.write)
    if result["miou"] > run.best:
        run.best = result["miou"]
        guard.check(run.folder.last)
        run.save(is_best=True)
    clock["evaluating"] += time.time() - start
    return result


def resumed_clock(saved, note=None) -> dict:
    """The run's clock going on from a checkpoint's times (its records' `time` and `train_time` count every
    session, not this one alone); from now for a checkpoint without them (an older one) or with others,
    which `note` is told of."""
    try:
        spent, evaluating = float(saved["time"]), float(saved["evaluating"])
        if not (math.isfinite(spent) and 0 <= evaluating <= spent <= 1e9):     # 30 years: an edited value
            raise ValueError
    except (TypeError, KeyError, ValueError):
        spent = evaluating = 0.0
        if saved is not None and note is not None:
            note(f"note: the checkpoint's clock {str(saved)[:80]} is not a run's times; the records' times count "
                 f"from this session's start")
    return {"t0": time.time() - spent, "evaluating": evaluating}


def loop(run: Run, until, stop: StopSignals) -> dict:
    """Train until cfg.steps (or `until`, or a stop signal), logging, evaluating and checkpointing."""
    cfg, folder, world = run.cfg, run.folder, run.world
    bar = tqdm(total=cfg.steps, initial=run.n, disable=not cfg.progress or world.rank > 0, dynamic_ncols=True,
               desc=cfg.mode)
    clock, result, guard, started = run.clock, {}, FiniteGuard(), run.n
    with contextlib.ExitStack() as scope:
        if run.plan.fused_ops:
            scope.enter_context(ops.validation(False))              # masks were checked at load: no per-step sync
        scope.callback(run.streams.close)
        scope.callback(bar.close)
        while run.n < cfg.steps and (until is None or run.n < until):
            terms = run.step(next_batch(run))
            run.n += 1
            guard.update(terms, run.n)
            bar.update(1)
            logging = run.n % cfg.log_every == 0 or run.n == cfg.steps
            if logging:
                guard.check(folder.last)
                vals = mean_terms(terms, world)
                folder.log({"step": run.n, "split": "train", "time": time.time() - clock["t0"], "lr": run.step.lr(),
                            **vals})
                bar.set_postfix({k: f"{v:.3f}" for k, v in vals.items()}, refresh=False)
            # a stop signal: after this step on one process; under torchrun at a log step, the same on every process
            asked = stop.signum is not None
            stopping = (logging and any_rank(asked, world)) if world.active else asked
            if run.n % cfg.eval_every == 0 or run.n == cfg.steps:
                result = evaluation(run, guard, bar, clock)
            if run.n % cfg.ckpt_every == 0 or run.n == cfg.steps or run.n == until or stopping:
                guard.check(folder.last)                            # never checkpoint a diverged model
                run.save()
            if stopping:
                signum = stop.signum or signal.SIGTERM
                raise Interrupted(signum, run.n, f"stopped by signal {signal.Signals(signum).name} after step {run.n}; "
                                  f"saved {folder.last}. Resume with: {resume_command(folder, run.world)}")
            if until is not None and run.n >= until:
                if run.n < cfg.steps:
                    folder.note(f"stopped after step {run.n} of {cfg.steps} (--stop-after); saved {folder.last}. "
                                f"Resume with: {resume_command(folder, run.world)}")
                break
    return closing(run, result, (started, until), guard, bar, clock)


def closing(run: Run, result: dict, span: tuple, guard: FiniteGuard, bar, clock: dict) -> dict:
    """The run's last validation metrics and its closing line. A resume with nothing left to train (a
    finished run, or --stop-after at or below the step reached) says so and returns the last record's."""
    (cfg, folder), (started, until) = (run.cfg, run.folder), span
    if run.n >= cfg.steps and not result and not any(r["step"] == run.n for r in folder.records("val")):
        result = evaluation(run, guard, bar, clock)                 # finished, but its final record was lost
    past = [r for r in folder.records("val") if r["step"] <= run.n]
    if not result and past:                                         # nothing evaluated in this process
        result = {k: v for k, v in past[-1].items() if k not in ("step", "split", "time", "train_time")}
    if run.n == started and run.n < cfg.steps:
        folder.note(f"{folder.path} is already at step {run.n} (--stop-after {until}): nothing to train"
                    + (f"; {scores(result)} at step {past[-1]['step']}" if past else ""))
    if run.n >= cfg.steps and result:
        folder.note(finished(run, result, time.time() - clock["t0"], run.n > started))
    return result


def scores(result: dict) -> str:
    return f"val mIoU {result['miou']:.4f}, mDice {result['mdice']:.4f}" + (
        f", volume Dice {result['volume_mdice']:.4f}" if result.get("volume_mdice") is not None else "")


def finished(run: Run, result: dict, seconds: float, trained: bool = True) -> str:
    """The closing lines: the scores and where the picture, the curves and the checkpoints are."""
    p = run.folder.path
    done = f"done: {run.n} steps in {seconds / 60:.1f} min" if trained else f"done earlier: {run.n} steps"
    return (f"{done}; {scores(result)}\n"
            f"  picture: {p / 'samples' / f'step{run.n:07d}.png'}  (image, truth, prediction"
            f"{', G_SI(truth)' if 'G_SI' in run.nets else ''})\n"
            f"  curves:  {p / 'curves.png'}\n"
            f"  model:   {p / 'best.pt'}  (python -m cycleseg.evaluate / predict / export)")


def describe(cfg: Config, meta, nets: dict) -> str:
    lines = ["config:", json.dumps(flat(cfg), indent=2),
             f"data: {meta.path} ({meta.count} images {meta.height}x{meta.width}x{meta.channels}, "
             f"{meta.num_classes} classes)", "parameters:"]
    lines += [f"  {k}: {count_parameters(v):,}" for k, v in nets.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    cfg, dry_run = parse_args(argv)
    given = given_fields(argv)
    if METHODS[cfg.mode].all_labels and cfg.labeled_fraction == 1.0:  # what the mode trains on (a grid's Full cell)
        given.discard("labeled_fraction")
    try:
        cfg = cfg.resolved()
    except UsageError as e:
        return fail(e)
    try:
        if dry_run:
            paths = split_paths(cfg.data, cfg.val_data, cfg.image_size, cfg.progress)
            meta = read_meta(paths["train"])
            check_given_size(cfg, given, (meta, read_meta(paths["val"])))
            for line in unread_notes(cfg, given):
                print(line, file=sys.stderr)
            torch.manual_seed(cfg.seed)
            print(describe(cfg, meta, networks_of(cfg, meta)))
            return 0
        result = train(cfg, given=given)
    except Interrupted as e:
        if not grid_cell():                                         # a grid's cell: the grid says it, in one line
            say(str(e))
        return 128 + e.signum
    except (DataError, CheckpointError, NonFiniteLoss, UsageError, OSError) as e:
        return fail(e)
    if int(os.environ.get("RANK", "0")) == 0:
        tell(json.dumps({"miou": result.get("miou"), "mdice": result.get("mdice"), "out": cfg.out}))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
