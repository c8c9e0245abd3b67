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
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device: str) -> tuple[World, torch.device]:
    """The process's place in the job (torchrun's environment) and its device; joins the process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))   # share the cores
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
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
