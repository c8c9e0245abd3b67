"""What a checkpoint of a run holds, and putting it back.

    step, best_miou, config, plan, data        the run (clock: its wall and evaluation time so far, train.py)
    nets, optimizers, schedulers               the same on every process
    world_size, ranks                          per process: history pools, stream positions, RNG states
    digest                                     of all of it but large tensors' values (checkpoint.digest)

Stream positions are stored as positions in the whole stream (a process of W has read 1/W of it), so a
checkpoint resumes on any number of processes (where the new count does not divide a stream's position,
the stream goes on from the multiple below it, re-reading fewer images than processes); pools and RNG
states go to the process of the same rank
(a process beyond the saved ranks starts with empty pools and rank 0's RNG state).
"""
from __future__ import annotations

import math
import sys

import torch

from .checkpoint import CheckpointError, check_digest, check_fingerprints, check_moments, check_weights
from .config import flat
from .distributed import World, gather
from .fastpath import Plan
from .models import data_info


def global_position(local: dict, world: World) -> dict:
    """A process's stream state as a position in the whole stream (each process reads 1/W of it)."""
    return {"pass": local["pass"], "pos": local["pos"] * world.size}


def state_dict(step_no: int, best: float, cfg, nets: dict, step, streams, data, world: World, device) -> dict | None:
    """The checkpoint (on rank 0; None on the other ranks, which send their part to rank 0)."""
    mine = {"pools": step.pool_state(),
            "streams": {k: global_position(v.state_dict(), world) for k, v in streams.loaders.items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
    ranks = gather(mine, world)
    if world.rank != 0:
        return None
    return {"step": step_no, "best_miou": best, "config": flat(cfg), "plan": step.plan.state_dict(),
            "data": {**data_info(data.train.meta), "fingerprints": data.fingerprints()}, "nets": {k: v.state_dict() for k, v in nets.items()}, **step.state_dict(),
            "world_size": world.size, "ranks": ranks}


def check_run_state(s: dict, path) -> Plan:
    """The plan of a checkpoint to resume; CheckpointError, before anything is restored, unless the parts a
    resume puts back have their kinds (a hand-edited or foreign last.pt would fail steps later, or keep
    best.pt from ever updating: a NaN best_miou)."""
    def bad(what: str):
        raise CheckpointError(f"{path}: cannot be resumed: {what}; train again into another --out")

    best = s.get("best_miou")
    if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best) or best > 1:
        bad(f"'best_miou' must be a number <= 1 (-inf before the first validation), got {best!r}")
    for group in ("optimizers", "schedulers"):
        if not isinstance(s.get(group), dict) or not all(isinstance(v, dict) for v in s[group].values()):
            bad(f"'{group}' must map names to state dicts, got {type(s.get(group)).__name__}")
    ranks = s.get("ranks")
    if not isinstance(ranks, list) or not ranks:
        bad(f"'ranks' must be a non-empty list of the processes' states, got {ranks!r}"[:160])
    for i, r in enumerate(ranks):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), dict) for k in ("pools", "streams", "rng")):
            bad(f"ranks[{i}] must hold dicts 'pools', 'streams' and 'rng'")
        for name, pos in r["streams"].items():
            if not isinstance(pos, dict) or not all(_whole(pos.get(k)) for k in ("pass", "pos")):
                bad(f"ranks[{i}]: stream {name!r} must have a pass and a position, whole numbers >= 0, got {pos!r}"[:200])
        for name, pool in r["pools"].items():
            images = pool.get("images", 0) if isinstance(pool, dict) else 0
            if not (_whole(pool.get("size") if isinstance(pool, dict) else None) and isinstance(pool.get("rng"), tuple)
                    and (images is None or isinstance(images, torch.Tensor) and images.dim() == 4
                         and len(images) <= pool["size"])):
                bad(f"ranks[{i}]: pool {name!r} must have a size, a random state and at most size images")
        if not all(v is None and k == "cuda" or _rng_state(v) for k, v in
                   ((k, r["rng"].get(k, 0)) for k in ("torch", "cuda"))):
            bad(f"ranks[{i}]: 'rng' must hold torch's random states (uint8 tensors)")
    try:
        return Plan.from_state(s["plan"]) if "plan" in s else None
    except ValueError as e:
        bad(str(e))


def check_stream_position(s: dict, name: str, order, path) -> None:
    """CheckpointError unless stream `name`'s saved (pass, position) lies where `s["step"]` steps could have
    left it: the position within one pass of the stream's images, and at most batch x step passes (each step
    reads one batch a process; a pass has at least one image a process). An edited position far beyond
    the stream read nothing and resumed in silence."""
    g = s["ranks"][0]["streams"].get(name)                        # a dict: check_run_state
    if g is None:
        raise CheckpointError(f"{path}: holds no position of the {name} stream; train again into another --out")
    images, most = len(order.indices), order.batch_size * max(int(s["step"]), 0) + 1
    if g["pos"] > images or g["pass"] > most:
        what = (f"position {g['pos']} in a pass of {images} images" if g["pos"] > images else
                f"pass {g['pass']} after {s['step']} steps of {order.batch_size} images (at most {most})")
        raise CheckpointError(f"{path}: cannot be resumed: the {name} stream's saved {what}: the file was edited "
                              f"or is not this run's; train again into another --out")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _rng_state(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1 and v.numel() > 0


def load_state_dict(s: dict, nets: dict, step, streams, data, path, world: World, device) -> tuple[int, float]:
    """Restore a checkpoint into this process's objects; returns (step number, best mIoU). A checkpoint of
    other data or networks: CheckpointError saying which, before any training."""
    meta = data.train.meta
    check_fingerprints(s, data.fingerprints(), {"train": data.train.path, "val": data.val.path}, path)
    for what in ("num_classes", "channels"):
        have, want = s.get("data", {}).get(what), getattr(meta, what)
        if have is not None and have != want:
            raise CheckpointError(f"{path}: trained on data with {have} {what.replace('_', ' ')}, but "
                                  f"{meta.path} has {want}")
    for k, loader in streams.loaders.items():
        check_stream_position(s, k, loader.order, path)
    mine = s["ranks"][world.rank] if world.rank < len(s["ranks"]) else None
    try:
        for k, net in nets.items():
            net.load_state_dict(s["nets"][k])
        step.load_state_dict(s)
        if mine is not None:
            step.load_pool_state(mine["pools"])
        for k, loader in streams.loaders.items():
            g = s["ranks"][0]["streams"][k]
            if g["pos"] % world.size and world.rank == 0:           # another process count than the run's
                print(f"note: stream {k} stopped at image {g['pos']} of its pass, not a multiple of {world.size} "
                      f"processes: it goes on from image {g['pos'] - g['pos'] % world.size} (a few images of "
                      f"this pass are read twice)", file=sys.stderr)
            loader.load_state_dict({"pass": g["pass"], "pos": g["pos"] // world.size})
        rng = (mine or s["ranks"][0])["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: does not match this run's networks, optimizers or processes "
                              f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from e
    check_optimizers(step, s["step"], path)
    check_weights(s, path)
    check_moments(s, path)
    check_digest(s, path, resume=True)                              # checked last: the reasons above say more
    return s["step"], float(s["best_miou"])




HYPERPARAMETERS = ("betas", "eps", "weight_decay", "momentum", "dampening", "nesterov", "amsgrad", "maximize")


def check_optimizers(step, n: int, path) -> None:
    """CheckpointError unless the restored optimizers and schedules are those of this run at step `n`: each
    hyperparameter as the run's config builds it (the learning rates are re-derived from the config after
    this), every schedule at step n, optimizer states present after a step, no per-parameter count beyond n.
    An edited step, betas or emptied state resumed in silence, training on from a state the run never had."""
    def bad(what: str):
        raise CheckpointError(f"{path}: cannot be resumed: {what}: the file was edited or is not this run's; "
                              f"train again into another --out")

    for name, sched in step.schedulers.items():
        if sched.last_epoch != n:
            bad(f"schedule {name} is at step {sched.last_epoch}, the checkpoint's step is {n}")
    for name, opt in step.optimizers.items():
        for group in opt.param_groups:
            for key in HYPERPARAMETERS:
                if key in opt.defaults and key in group and group[key] != opt.defaults[key]:
                    bad(f"optimizer {name}'s {key} is {group[key]!r}, the run's config gives {opt.defaults[key]!r}")
        keeps_state = "betas" in opt.defaults or opt.defaults.get("momentum", 0)   # G_IS learns at every step
        if name == "G" and n > 0 and keeps_state and not opt.state:
            bad(f"optimizer {name} holds no state after {n} steps")
        counts = [float(v["step"]) for v in opt.state.values() if isinstance(v, dict) and "step" in v]
        if counts and max(counts) > n:
            bad(f"optimizer {name} counts {max(counts):g} steps, the checkpoint's step is {n}")
