"""What the commands that read a checkpoint share (cycleseg.evaluate, cycleseg.predict): their common
options, the device, and the exit code 2 with a one-line message for a bad checkpoint or bad data."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def checkpoint_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a run's last.pt or best.pt")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N; auto = cuda when there is a GPU")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_or_exit(fn, args) -> tuple[int, object]:
    """(0, fn(args)), or (2, None) after printing the message of a known failure."""
    from .checkpoint import CheckpointError
    from .data.h5format import DataError

    try:
        return 0, fn(args)
    except (CheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
