"""Scale-out with torchrun on PyTorch's own engine: one process per GPU (NCCL) or per share of the CPU
cores (gloo), the networks an update trains wrapped in DistributedDataParallel (gradients averaged over
processes), each process reading its own shard of both streams.

    torchrun --nproc-per-node 4 -m cycleseg.train --data ...                   # one machine, 4 GPUs
    torchrun --nnodes 2 --node-rank 0 --master-addr host0 --nproc-per-node 8 -m cycleseg.train ...

Only rank 0 writes (run folder, checkpoints, pictures, progress). Validation is sharded and its
confusion matrix summed over processes. Each process has its own history pools and RNG streams; all of
them go into the checkpoint, which resumes on any number of processes (stream positions are stored
globally, pools and RNG states are handed out by rank). A process that fails takes the job down:
torchrun stops the others, and collectives time out rather than hang.
"""
from __future__ import annotations

import datetime
import os
import re
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .usage import UsageError

TIMEOUT = datetime.timedelta(minutes=10)
WAIT_NOTE_S = 10.0                              # a rendezvous slower than this is said (a peer that never came)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1


def env_number(name: str, default: int | None = None, least: int = 0) -> int:
    """A torchrun variable as a whole number >= least (`default` when unset); UsageError naming it otherwise
    (a plain run with WORLD_SIZE left in its environment crashed on a KeyError or waited silently)."""
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    if raw is None:
        raise UsageError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for a distributed job, but {name} is not "
                         f"set: start it with torchrun (which sets them), or unset WORLD_SIZE for one process")
    if not re.fullmatch(r"\d{1,9}", raw.strip()) or int(raw) < least:
        raise UsageError(f"the environment variable {name}={raw!r} is not a whole number of at least {least} "
                         f"(torchrun sets it); unset it for a run of one process")
    return int(raw)


def check_torchrun_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment, checked."""
    size = env_number("WORLD_SIZE", 1, least=1)
    rank = env_number("RANK", 0 if size == 1 else None)
    if rank >= size:
        raise UsageError(f"the environment variable RANK={rank} is not a rank of WORLD_SIZE={size} processes "
                         f"(0..{size - 1}); unset both for a run of one process")
    if size > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name, "").strip():
                raise UsageError(f"WORLD_SIZE={size} asks for a distributed job, but {name} is not set: start it "
                                 f"with torchrun (which sets it), or unset WORLD_SIZE for one process")
    return size, rank, env_number("LOCAL_RANK", 0)


def setup(device: str) -> tuple[World, torch.device]:
    """The process's place in the job (torchrun's environment) and its device; joins the process group,
    saying what it waits for when the others are slow to join."""
    size, rank, local = check_torchrun_env()
    if size == 1:
        return World(), torch.device(device)
    if device.startswith("cuda"):
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        local_size = env_number("LOCAL_WORLD_SIZE", 1, least=1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))   # share the cores
        backend = "gloo"
    if not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        waiting = threading.Timer(WAIT_NOTE_S, lambda: print(
            f"note: process {rank} of {size} waits for the others to join at {where} (torch.distributed; up to "
            f"{int(TIMEOUT.total_seconds() // 60)} min)", file=sys.stderr, flush=True))
        waiting.daemon = True
        waiting.start()
        try:
            dist.init_process_group(backend, timeout=TIMEOUT)
        finally:
            waiting.cancel()
    return World(rank, size, local), dev


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def wrapper(world: World, device: torch.device):
    """module -> DistributedDataParallel(module) (static graph: a network may run twice in one update)."""

    if not world.active:
        return lambda m: m
    return lambda m: DDP(m, device_ids=[device] if device.type == "cuda" else None, static_graph=True)


def all_sum_(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(t)
    return t


def gather(obj, world: World) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0 (None elsewhere)."""
    if not world.active:
        return [obj]
    out = [None] * world.size if world.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj, world: World):
    """Rank 0's obj, on every rank."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when `flag` is true on any (a collective: call it on every rank)."""
    if not world.active:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
