"""What a checkpoint of a run holds, and putting it back.

    step, best_miou, config, plan, data        the run
    nets, optimizers, schedulers               the same on every process
    world_size, ranks                          per process: history pools, stream positions, RNG states

Stream positions are stored as positions in the whole stream (a process of W has read 1/W of it), so a
checkpoint resumes on any number of processes (where the new count does not divide a stream's position,
the stream goes on from the multiple below it, re-reading fewer images than processes); pools and RNG
states go to the process of the same rank
(a process beyond the saved ranks starts with empty pools and rank 0's RNG state).
"""
from __future__ import annotations

import sys

import torch

from .checkpoint import CheckpointError, check_fingerprints
from .config import flat
from .distributed import World, gather
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
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not match this run's networks, optimizers or processes "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    rng = (mine or s["ranks"][0])["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return s["step"], s["best_miou"]
