"""What the commands that read a checkpoint share (cycleseg.evaluate, cycleseg.predict): their common
options, the device, and the exit code 2 with a one-line message for a bad option, checkpoint, input or
output folder."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .config import check_device
from .data.h5format import DataError
from .fastpath import PRECISIONS
from .fileio import NAME_MAX, file_keys, remove_stale_temporaries
from .usage import Parser, UsageError, fail, path_arg, plain_int


def batch_size(text: str) -> int:
    """--batch-size of evaluate and predict: 1..4096, train's bound (a typo's 10^8 would end out of memory)."""
    try:
        v = plain_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in 1..4096, got {text!r}") from None
    if not 1 <= v <= 4096:
        raise argparse.ArgumentTypeError(f"must be in 1..4096, got {v}")
    return v


def checkpoint_parser(prog: str, doc: str, what: str = "a run's last.pt or best.pt") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=doc)
    p.add_argument("checkpoint", type=path_arg, help=what)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N; auto = cuda when there is a GPU")
    p.add_argument("--batch-size", type=batch_size, default=16, help="images per forward pass")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="G_IS's arithmetic: auto = bf16 autocast where the device runs bf16 natively (GPUs; CPUs "
                        "with AVX512-BF16 / AMX), else fp32")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (default: refuse)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(name))


def refuse_existing(paths, overwrite: bool, what: str, inputs=()) -> None:
    """UsageError naming the outputs that exist already, unless overwrite; an output that is one of the
    command's `inputs` (a checkpoint, an image, a record file), or a folder, is refused even with
    --overwrite, and so is a name longer than file systems allow (an input's long name with a suffix).
    Checked before anything is written."""
    for folder in dict.fromkeys(Path(p).parent for p in paths):     # a set a killed command was renaming there:
        remove_stale_temporaries(folder.parent, folder.name, inputs)  # completed first (fileio.complete_commit)
    ins = set().union(*(file_keys(i) for i in inputs))               # each path resolved once: many inputs stay linear
    for p in map(Path, paths):
        if (n := len(os.fsencode(p.name))) > NAME_MAX:
            raise UsageError(f"{p.parent}/{p.name[:40]}...: an output name of {n} bytes, longer than file names may "
                             f"be ({NAME_MAX}); shorten it (the --out given, or the name of the input it is made from)")
        if file_keys(p) & ins:
            raise UsageError(f"{p} is one of this command's inputs: an output never replaces an input; choose "
                             f"another --out")
        if p.is_dir():
            raise UsageError(f"{p} is a folder where this command writes a file; move it or choose another --out")
    found = [str(p) for p in paths if Path(p).exists()]
    if found and not overwrite:
        more = f" and {len(found) - 1} more exist" if len(found) > 1 else " exists"
        raise UsageError(f"{found[0]}{more} already ({what}); pass --overwrite to replace "
                         f"{'them' if len(found) > 1 else 'it'}, or choose another --out")


def run_or_exit(fn, args) -> tuple[int, object]:
    """(0, fn(args)), or (2, None) after printing the message of a known failure."""
    try:
        return 0, fn(args)
    except (CheckpointError, DataError, UsageError, OSError) as e:     # OSError: a read-only or full folder
        return fail(e), None
